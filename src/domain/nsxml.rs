//! Elements in foreign namespaces (the children of `<metadata>`) written
//! back whole: each declares the namespaces it uses where it first uses them,
//! wherever the source declared them, so that it parses on its own and the
//! stored domain XML is well formed whatever the client wrote.

use std::fmt::Write as _;

/// An element `node` and its content as text, namespaces declared by `mode`.
pub fn element(node: roxmltree::Node, mode: Mode) -> String {
    let mut out = String::new();
    write_element(node, mode, &mut Vec::new(), &mut out);
    out
}

/// `<metadata>` holding these elements (already written), in the domain
/// XML's layout.
pub fn metadata<'a>(children: impl Iterator<Item = &'a str>) -> String {
    let mut raw = String::from("<metadata>");
    let mut any = false;
    for text in children {
        let _ = write!(raw, "\n    {text}");
        any = true;
    }
    if !any {
        return "<metadata/>".into();
    }
    raw.push_str("\n  </metadata>");
    raw
}

/// How namespaces are written.
#[derive(Clone, Copy)]
pub enum Mode<'a> {
    /// As they are.
    Keep,
    /// Elements in this namespace unqualified, and it undeclared (libvirt's
    /// `virXMLExtractNamespaceXML`).
    Strip(&'a str),
    /// Unqualified elements put in namespace `uri` under prefix `key`
    /// (libvirt's `virXMLInjectNamespace`).
    Inject {
        /// The prefix.
        key: &'a str,
        /// The namespace.
        uri: &'a str,
    },
}

/// Writes element `node` and its content; namespaces are declared where
/// first used (`scope` holds the (prefix, uri) pairs declared by ancestors).
fn write_element(node: roxmltree::Node, mode: Mode, scope: &mut Vec<(String, String)>, out: &mut String) {
    let depth = scope.len();
    let mut decls: Vec<(String, String)> = Vec::new();
    let qualify = |ns: Option<&str>, element: bool, decls: &mut Vec<(String, String)>| -> String {
        let (prefix, uri) = match (ns, mode) {
            (Some(u), Mode::Strip(s)) if u == s && element => return String::new(),
            (Some(u), _) => (node.lookup_prefix(u).unwrap_or("").to_owned(), u.to_owned()),
            (None, Mode::Inject { key, uri }) if element => (key.to_owned(), uri.to_owned()),
            // Unqualified: under a default namespace it must undeclare it.
            (None, _) if element => (String::new(), String::new()),
            (None, _) => return String::new(),
        };
        // Declared unless the nearest declaration of the prefix already binds it.
        let bound = scope.iter().chain(decls.iter()).rev().find(|(p, _)| *p == prefix).map(|(_, u)| u.as_str());
        if bound.unwrap_or("") != uri {
            decls.push((prefix.clone(), uri));
        }
        if prefix.is_empty() { String::new() } else { format!("{prefix}:") }
    };
    let name = format!("{}{}", qualify(node.tag_name().namespace(), true, &mut decls), node.tag_name().name());
    let attrs: Vec<(String, String)> = node
        .attributes()
        .map(|a| (format!("{}{}", qualify(a.namespace(), false, &mut decls), a.name()), a.value().to_owned()))
        .collect();
    let _ = write!(out, "<{name}");
    for (prefix, uri) in &decls {
        let attr = if prefix.is_empty() { "xmlns".to_owned() } else { format!("xmlns:{prefix}") };
        let _ = write!(out, " {attr}=\"{}\"", escape(uri));
    }
    for (k, v) in &attrs {
        let _ = write!(out, " {k}=\"{}\"", escape(v));
    }
    scope.extend(decls);
    let content: Vec<roxmltree::Node> = node.children().filter(|c| c.is_element() || c.is_text()).collect();
    if content.is_empty() {
        out.push_str("/>");
    } else {
        out.push('>');
        for c in content {
            if c.is_element() {
                write_element(c, mode, scope, out);
            } else {
                out.push_str(&escape(c.text().unwrap_or("")));
            }
        }
        let _ = write!(out, "</{name}>");
    }
    scope.truncate(depth);
}

/// Escapes text or an attribute value so that it parses back to itself
/// (line ends and tabs as references: a parser normalizes them otherwise).
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\r' => out.push_str("&#13;"),
            '\n' => out.push_str("&#10;"),
            '\t' => out.push_str("&#9;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first_child(text: &str, mode: Mode) -> String {
        let doc = roxmltree::Document::parse(text).unwrap();
        let node = doc.root_element().children().find(|c| c.is_element()).unwrap();
        element(node, mode)
    }

    #[test]
    fn declarations_made_on_ancestors_come_along_and_the_text_parses_back_to_itself() {
        let src = "<domain xmlns:a='http://a/'><metadata><a:x v='1&#10;2'>t&#13;<a:y/><b:z xmlns:b='http://b/'/></a:x></metadata></domain>";
        let doc = roxmltree::Document::parse(src).unwrap();
        let md = doc.root_element().first_element_child().unwrap();
        let out = element(md.first_element_child().unwrap(), Mode::Keep);
        assert_eq!(out, "<a:x xmlns:a=\"http://a/\" v=\"1&#10;2\">t&#13;<a:y/><b:z xmlns:b=\"http://b/\"/></a:x>");
        assert_eq!(first_child(&format!("<m>{out}</m>"), Mode::Keep), out);
        assert_eq!(
            first_child(&format!("<m>{out}</m>"), Mode::Strip("http://a/")),
            "<x v=\"1&#10;2\">t&#13;<y/><b:z xmlns:b=\"http://b/\"/></x>"
        );
        assert_eq!(
            first_child("<m><p><q/></p></m>", Mode::Inject { key: "k", uri: "u" }),
            "<k:p xmlns:k=\"u\"><k:q/></k:p>"
        );
        assert_eq!(metadata(std::iter::empty()), "<metadata/>");
        // Redeclared prefixes and an unqualified child of a default namespace keep their meaning.
        let tricky = "<m><f xmlns='http://f/'><g xmlns=''/><a:x xmlns:a='u1'><a:y xmlns:a='u2'/><a:z/></a:x></f></m>";
        let out = first_child(tricky, Mode::Keep);
        assert_eq!(
            out,
            "<f xmlns=\"http://f/\"><g xmlns=\"\"/><a:x xmlns:a=\"u1\"><a:y xmlns:a=\"u2\"/><a:z/></a:x></f>"
        );
        assert_eq!(first_child(&format!("<m>{out}</m>"), Mode::Keep), out);
    }
}
