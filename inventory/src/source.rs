//! The YAML source with positions: syntax errors with lines, a line for every field path, and a
//! structural pass that reports every unknown key and unparsable value at once (serde stops at
//! the first one).

use std::collections::HashMap;
use std::fmt;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

/// A field path such as `spec.hosts[2].address`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct FieldPath(pub(crate) Vec<Seg>);

impl FieldPath {
    pub(crate) fn root() -> Self {
        FieldPath(Vec::new())
    }

    /// Parses the dotted form used in the code (`spec.cluster.podCIDR`); keys with dots
    /// must be added with [`FieldPath::key`].
    pub(crate) fn parse(dotted: &str) -> Self {
        FieldPath(
            dotted
                .split('.')
                .filter(|s| !s.is_empty())
                .map(|s| Seg::Key(s.to_string()))
                .collect(),
        )
    }

    pub(crate) fn key(&self, key: &str) -> Self {
        let mut p = self.clone();
        p.0.push(Seg::Key(key.to_string()));
        p
    }

    pub(crate) fn index(&self, i: usize) -> Self {
        let mut p = self.clone();
        p.0.push(Seg::Index(i));
        p
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Index(n) => write!(f, "[{n}]")?,
                Seg::Key(k)
                    if k.starts_with(|c: char| c.is_ascii_alphabetic())
                        && k.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') =>
                {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    f.write_str(k)?;
                }
                Seg::Key(k) => write!(f, "[{k:?}]")?,
            }
        }
        Ok(())
    }
}

/// A problem found before line numbers are attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Issue {
    pub(crate) path: FieldPath,
    pub(crate) message: String,
    pub(crate) hint: String,
}

impl Issue {
    pub(crate) fn new(
        path: FieldPath,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Issue {
            path,
            message: message.into(),
            hint: hint.into(),
        }
    }
}

/// A YAML node with the (1-based) line it starts on.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub(crate) line: usize,
    pub(crate) kind: NodeKind,
}

#[derive(Debug, Clone)]
pub(crate) enum NodeKind {
    /// A scalar; `null` is true for an empty/`~`/`null` plain scalar.
    Scalar {
        value: String,
        null: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<Entry>),
}

/// One `key: value` of a mapping; `key_line` is where the key is written.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) key: String,
    pub(crate) key_line: usize,
    pub(crate) value: Node,
}

/// A parsed YAML document with positions.
#[derive(Debug, Clone)]
pub(crate) struct SourceTree {
    pub(crate) root: Option<Node>,
    pub(crate) documents: usize,
}

/// A YAML syntax error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyntaxError {
    pub(crate) line: usize,
    pub(crate) column: usize,
    pub(crate) message: String,
}

impl SourceTree {
    /// Parses `text`; every document is read (to count them) but only the first is kept.
    pub(crate) fn parse(text: &str) -> Result<SourceTree, SyntaxError> {
        let mut builder = TreeBuilder::default();
        let mut parser = Parser::new_from_str(text);
        parser.load(&mut builder, true).map_err(|e| SyntaxError {
            line: e.marker().line(),
            column: e.marker().col() + 1,
            message: e.info().to_string(),
        })?;
        Ok(SourceTree {
            root: builder.documents.into_iter().next(),
            documents: builder.document_count,
        })
    }

    /// The node at `path`, if the file has it.
    #[cfg(test)]
    pub(crate) fn node_at(&self, path: &FieldPath) -> Option<&Node> {
        let mut node = self.root.as_ref()?;
        for seg in &path.0 {
            node = match (seg, &node.kind) {
                (Seg::Key(k), NodeKind::Map(entries)) => {
                    &entries.iter().find(|e| &e.key == k)?.value
                }
                (Seg::Index(i), NodeKind::Seq(items)) => items.get(*i)?,
                _ => return None,
            };
        }
        Some(node)
    }

    /// Line of the field at `path`, or of its nearest ancestor written in the file.
    pub(crate) fn line_of(&self, path: &FieldPath) -> Option<usize> {
        let mut node = self.root.as_ref()?;
        let mut line = None;
        for seg in &path.0 {
            match (seg, &node.kind) {
                (Seg::Key(k), NodeKind::Map(entries)) => {
                    match entries.iter().find(|e| &e.key == k) {
                        Some(e) => {
                            line = Some(e.key_line);
                            node = &e.value;
                        }
                        None => break,
                    }
                }
                (Seg::Index(i), NodeKind::Seq(items)) => match items.get(*i) {
                    Some(item) => {
                        line = Some(item.line);
                        node = item;
                    }
                    None => break,
                },
                _ => break,
            }
        }
        line
    }
}

#[derive(Default)]
struct TreeBuilder {
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    documents: Vec<Node>,
    document_count: usize,
}

enum Frame {
    Seq {
        line: usize,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        line: usize,
        anchor: usize,
        entries: Vec<Entry>,
        pending_key: Option<(String, usize)>,
    },
}

impl TreeBuilder {
    fn finish(&mut self, node: Node, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => self.documents.push(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map {
                entries,
                pending_key,
                ..
            }) => match pending_key.take() {
                None => {
                    let key = match &node.kind {
                        NodeKind::Scalar { value, .. } => value.clone(),
                        _ => "<complex key>".to_string(),
                    };
                    *pending_key = Some((key, node.line));
                }
                Some((key, key_line)) => entries.push(Entry {
                    key,
                    key_line,
                    value: node,
                }),
            },
        }
    }
}

impl MarkedEventReceiver for TreeBuilder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let line = mark.line();
        match ev {
            Event::DocumentStart => self.document_count += 1,
            Event::MappingStart(anchor, _) => self.stack.push(Frame::Map {
                line,
                anchor,
                entries: Vec::new(),
                pending_key: None,
            }),
            Event::SequenceStart(anchor, _) => self.stack.push(Frame::Seq {
                line,
                anchor,
                items: Vec::new(),
            }),
            Event::MappingEnd | Event::SequenceEnd => {
                let (node, anchor) = match self.stack.pop() {
                    Some(Frame::Map {
                        line,
                        anchor,
                        entries,
                        ..
                    }) => (
                        Node {
                            line,
                            kind: NodeKind::Map(entries),
                        },
                        anchor,
                    ),
                    Some(Frame::Seq {
                        line,
                        anchor,
                        items,
                    }) => (
                        Node {
                            line,
                            kind: NodeKind::Seq(items),
                        },
                        anchor,
                    ),
                    None => return,
                };
                self.finish(node, anchor);
            }
            Event::Scalar(value, style, anchor, _) => {
                let null = style == TScalarStyle::Plain
                    && matches!(value.as_str(), "" | "~" | "null" | "Null" | "NULL");
                self.finish(
                    Node {
                        line,
                        kind: NodeKind::Scalar { value, null },
                    },
                    anchor,
                );
            }
            Event::Alias(id) => {
                let mut node = self.anchors.get(&id).cloned().unwrap_or(Node {
                    line,
                    kind: NodeKind::Scalar {
                        value: String::new(),
                        null: true,
                    },
                });
                node.line = line;
                self.finish(node, 0);
            }
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
        }
    }
}

/// The expected shape of a part of the file.
pub(crate) enum Shape {
    /// A mapping with exactly these keys allowed.
    Map(Vec<(&'static str, Shape)>),
    /// A sequence of items of one shape.
    Seq(Box<Shape>),
    /// A mapping of arbitrary string keys to scalars (labels).
    FreeMap,
    /// A single value.
    Scalar(Check),
}

/// What a scalar must parse as; values left to serde use `Any`.
pub(crate) enum Check {
    Any,
    Ip,
    Cidr,
    Role,
    Taint,
    OneOf(&'static [&'static str]),
}

impl Check {
    fn run(&self, value: &str) -> Result<(), (String, String)> {
        match self {
            Check::Any => Ok(()),
            Check::Ip => value.parse::<std::net::IpAddr>().map(|_| ()).map_err(|_| {
                (
                    format!("`{value}` is not an IP address"),
                    "write an IPv4 or IPv6 address such as 10.0.0.10".to_string(),
                )
            }),
            Check::Cidr => value.parse::<ipnet::IpNet>().map(|_| ()).map_err(|_| {
                (
                    format!("`{value}` is not a CIDR range"),
                    "write address/prefix such as 10.244.0.0/16".to_string(),
                )
            }),
            Check::Role => value
                .parse::<crate::Role>()
                .map(|_| ())
                .map_err(|e| (e, "use control-plane, worker, etcd or lb".to_string())),
            Check::Taint => value.parse::<crate::Taint>().map(|_| ()).map_err(|e| {
                (
                    e,
                    "write key[=value]:Effect, e.g. dedicated=infra:NoSchedule".to_string(),
                )
            }),
            Check::OneOf(allowed) => {
                if allowed.contains(&value) {
                    Ok(())
                } else {
                    Err((
                        format!("`{value}` is not a valid choice"),
                        format!("use one of: {}", allowed.join(", ")),
                    ))
                }
            }
        }
    }
}

fn any() -> Shape {
    Shape::Scalar(Check::Any)
}

fn map(fields: Vec<(&'static str, Shape)>) -> Shape {
    Shape::Map(fields)
}

/// The shape of the whole inventory file; must list exactly the keys the serde types accept
/// (a test keeps the two in step).
pub(crate) fn inventory_shape() -> Shape {
    let ssh = map(vec![
        ("user", any()),
        ("port", any()),
        ("keyPath", any()),
        ("passwordEnv", any()),
        ("sudo", any()),
    ]);
    let host = map(vec![
        ("name", any()),
        ("address", any()),
        ("ssh", ssh),
        ("roles", Shape::Seq(Box::new(Shape::Scalar(Check::Role)))),
        ("labels", Shape::FreeMap),
        ("taints", Shape::Seq(Box::new(Shape::Scalar(Check::Taint)))),
        ("privateAddress", Shape::Scalar(Check::Ip)),
    ]);
    let cluster = map(vec![
        ("version", any()),
        ("clusterName", any()),
        ("podCIDR", Shape::Scalar(Check::Cidr)),
        ("serviceCIDR", Shape::Scalar(Check::Cidr)),
        ("nodeCIDRMaskSize", any()),
        ("dnsDomain", any()),
        ("apiEndpoint", map(vec![("host", any()), ("port", any())])),
        (
            "vip",
            map(vec![
                ("address", Shape::Scalar(Check::Ip)),
                ("prefixLength", any()),
                ("interface", any()),
                ("port", any()),
                ("virtualRouterId", any()),
            ]),
        ),
        (
            "cni",
            map(vec![(
                "mode",
                Shape::Scalar(Check::OneOf(&["auto", "host-gw", "vxlan"])),
            )]),
        ),
        ("addons", map(vec![("dns", any()), ("ingress", any())])),
        ("dns", map(vec![("upstreams", Shape::Seq(Box::new(any())))])),
        (
            "pki",
            map(vec![
                ("caValidityDays", any()),
                ("certValidityDays", any()),
                (
                    "keyAlgorithm",
                    Shape::Scalar(Check::OneOf(&crate::model::KEY_ALGORITHMS)),
                ),
            ]),
        ),
        (
            "datastore",
            Shape::Scalar(Check::OneOf(&["embedded", "etcd"])),
        ),
    ]);
    map(vec![
        ("apiVersion", any()),
        ("kind", any()),
        ("metadata", map(vec![("name", any())])),
        (
            "spec",
            map(vec![
                ("hosts", Shape::Seq(Box::new(host))),
                ("cluster", cluster),
            ]),
        ),
    ])
}

fn describe(kind: &NodeKind) -> &'static str {
    match kind {
        NodeKind::Scalar { null: true, .. } => "empty",
        NodeKind::Scalar { .. } => "a single value",
        NodeKind::Seq(_) => "a list",
        NodeKind::Map(_) => "a mapping",
    }
}

/// Suggests the allowed key closest to a misspelt one.
fn closest<'a>(key: &str, allowed: &[&'a str]) -> Option<&'a str> {
    if let Some(k) = allowed.iter().find(|k| k.eq_ignore_ascii_case(key)) {
        return Some(k);
    }
    allowed
        .iter()
        .map(|k| (strsim::levenshtein(key, k), *k))
        .filter(|(d, _)| *d <= 3)
        .min()
        .map(|(_, k)| k)
}

/// Checks `node` against `shape`, pushing every mismatch.
pub(crate) fn check_shape(node: &Node, shape: &Shape, path: &FieldPath, issues: &mut Vec<Issue>) {
    match (shape, &node.kind) {
        (Shape::Map(fields), NodeKind::Map(entries)) => {
            let allowed: Vec<&str> = fields.iter().map(|(k, _)| *k).collect();
            for (i, entry) in entries.iter().enumerate() {
                let entry_path = path.key(&entry.key);
                if entries[..i].iter().any(|e| e.key == entry.key) {
                    issues.push(Issue::new(
                        entry_path,
                        format!("`{}` is written twice", entry.key),
                        "keep one of them",
                    ));
                    continue;
                }
                match fields.iter().find(|(k, _)| *k == entry.key) {
                    Some((_, sub)) => check_shape(&entry.value, sub, &entry_path, issues),
                    None => {
                        let hint = match closest(&entry.key, &allowed) {
                            Some(k) => {
                                format!("did you mean `{k}`? (fields here: {})", allowed.join(", "))
                            }
                            None => format!("fields here: {}", allowed.join(", ")),
                        };
                        issues.push(Issue::new(
                            entry_path,
                            format!("unknown field `{}`", entry.key),
                            hint,
                        ));
                    }
                }
            }
        }
        (Shape::Seq(item), NodeKind::Seq(items)) => {
            for (i, it) in items.iter().enumerate() {
                check_shape(it, item, &path.index(i), issues);
            }
        }
        (Shape::FreeMap, NodeKind::Map(entries)) => {
            for (i, entry) in entries.iter().enumerate() {
                let entry_path = path.key(&entry.key);
                if entries[..i].iter().any(|e| e.key == entry.key) {
                    issues.push(Issue::new(
                        entry_path,
                        format!("`{}` is written twice", entry.key),
                        "keep one of them",
                    ));
                } else if !matches!(entry.value.kind, NodeKind::Scalar { .. }) {
                    issues.push(Issue::new(
                        entry_path,
                        format!(
                            "is {}, expected a single value",
                            describe(&entry.value.kind)
                        ),
                        "write `key: value`",
                    ));
                }
            }
        }
        (Shape::Scalar(check), NodeKind::Scalar { value, null }) => {
            if *null && !matches!(check, Check::Any) {
                issues.push(Issue::new(
                    path.clone(),
                    "is empty",
                    "give it a value or remove the line",
                ));
            } else if !*null {
                if let Err((message, hint)) = check.run(value) {
                    issues.push(Issue::new(path.clone(), message, hint));
                }
            }
        }
        (Shape::Scalar(Check::Any), _) => {} // serde reports the type with its expectation
        (expected, kind) => {
            let want = match expected {
                Shape::Map(_) | Shape::FreeMap => "a mapping (`key: value` lines)",
                Shape::Seq(_) => "a list (`- item` lines or `[a, b]`)",
                Shape::Scalar(_) => "a single value",
            };
            issues.push(Issue::new(
                path.clone(),
                format!("is {}, expected {want}", describe(kind)),
                "fix the indentation or the value; see the field reference in the inventory README",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_one_based_and_point_at_keys() {
        let tree = SourceTree::parse(
            "apiVersion: x\nspec:\n  hosts:\n    - name: a\n      address: 1.2.3.4\n    - name: b\n",
        )
        .unwrap();
        assert_eq!(tree.line_of(&FieldPath::parse("apiVersion")), Some(1));
        assert_eq!(tree.line_of(&FieldPath::parse("spec.hosts")), Some(3));
        let host0 = FieldPath::parse("spec.hosts").index(0);
        assert_eq!(tree.line_of(&host0.key("address")), Some(5));
        assert_eq!(
            tree.line_of(&FieldPath::parse("spec.hosts").index(1)),
            Some(6)
        );
        // Missing fields fall back to the nearest written ancestor.
        assert_eq!(
            tree.line_of(&FieldPath::parse("spec.cluster.podCIDR")),
            Some(2)
        );
        assert_eq!(tree.line_of(&FieldPath::parse("metadata")), None);
    }

    #[test]
    fn syntax_errors_carry_the_line() {
        let err = SourceTree::parse("a: 1\nb: [1, 2\nc: 3\n").unwrap_err();
        assert!(err.line >= 2, "{err:?}");
    }

    #[test]
    fn paths_render_like_kubectl_explain() {
        let p = FieldPath::parse("spec.hosts")
            .index(2)
            .key("labels")
            .key("example.com/disk");
        assert_eq!(p.to_string(), "spec.hosts[2].labels[\"example.com/disk\"]");
        assert_eq!(
            FieldPath::parse("spec.cluster.podCIDR").to_string(),
            "spec.cluster.podCIDR"
        );
    }

    #[test]
    fn anchors_and_aliases_are_expanded() {
        let tree = SourceTree::parse("a: &x {p: 1}\nb: *x\n").unwrap();
        let mut issues = Vec::new();
        let shape = map(vec![
            ("a", map(vec![("p", any())])),
            ("b", map(vec![("q", any())])),
        ]);
        check_shape(
            tree.root.as_ref().unwrap(),
            &shape,
            &FieldPath::root(),
            &mut issues,
        );
        assert_eq!(issues.len(), 1);
        assert_eq!(issues[0].path.to_string(), "b.p");
    }
}
