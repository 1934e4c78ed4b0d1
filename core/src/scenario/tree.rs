//! The scenario document as a positioned tree, read leniently.
//!
//! This is the first stage of loading: the YAML text becomes a tree of
//! mappings, sequences and scalars, each node with its line and column, and
//! nothing about the scenario's schema is assumed yet. Reading stops only at
//! what makes the text unreadable (a syntax error, a hostile size or depth);
//! every question of keys, types and values is left to [`super::raw`], which
//! reports them all at once.
//!
//! Guarantees: never panics; the input limits ([`Limits`]) are checked before
//! the parser sees the text (size, flow nesting) or while events stream in
//! (block nesting, alias expansion), so that a hostile file is rejected in
//! time linear in the bytes read before the limit.

use crate::diag::{Code, Pos};
use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A node of the document with where it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// A scalar. `plain` is true when it was written without quotes or block
    /// indicators, which is when YAML reads `1.30` as a number and `true` as a
    /// boolean.
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<Entry>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key: String,
    pub key_pos: Pos,
    pub value: Node,
}

/// How a plain scalar reads under YAML 1.2's core schema.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Plain {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Text,
}

impl Node {
    /// What the user wrote here, for messages: "the text `x`", "a list", ...
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::Scalar { text, plain: true } => match plain_kind(text) {
                Plain::Null => "nothing (null)".into(),
                Plain::Bool(b) => format!("the boolean {b}"),
                Plain::Int(_) | Plain::Float(_) => format!("the number {text}"),
                Plain::Text => format!("the text `{text}`"),
            },
            Kind::Scalar { text, .. } => format!("the quoted text \"{text}\""),
            Kind::Seq(_) => "a list".into(),
            Kind::Map(_) => "a mapping".into(),
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(&self.kind, Kind::Scalar { text, plain: true } if plain_kind(text) == Plain::Null)
    }
}

/// Reads a plain scalar as YAML 1.2's core schema does.
pub fn plain_kind(text: &str) -> Plain {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Plain::Null,
        "true" | "True" | "TRUE" => return Plain::Bool(true),
        "false" | "False" | "FALSE" => return Plain::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Plain::Float(f64::INFINITY)
        }
        "-.inf" | "-.Inf" | "-.INF" => return Plain::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Plain::Float(f64::NAN),
        _ => {}
    }
    let digits = |s: &str, radix: u32| !s.is_empty() && s.chars().all(|c| c.is_digit(radix));
    if let Some(h) = text.strip_prefix("0x") {
        if digits(h, 16) {
            return i128::from_str_radix(h, 16).map_or(Plain::Text, Plain::Int);
        }
    }
    if let Some(o) = text.strip_prefix("0o") {
        if digits(o, 8) {
            return i128::from_str_radix(o, 8).map_or(Plain::Text, Plain::Int);
        }
    }
    let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
    if digits(unsigned, 10) {
        return text.parse().map_or(Plain::Text, Plain::Int);
    }
    // [-+]? ( \. [0-9]+ | [0-9]+ ( \. [0-9]* )? ) ( [eE] [-+]? [0-9]+ )?
    let (mant, exp) = match unsigned.find(['e', 'E']) {
        Some(i) => (&unsigned[..i], Some(&unsigned[i + 1..])),
        None => (unsigned, None),
    };
    let mant_ok = match mant.split_once('.') {
        Some((a, b)) => {
            (a.is_empty() || digits(a, 10))
                && (b.is_empty() || digits(b, 10))
                && !(a.is_empty() && b.is_empty())
        }
        None => digits(mant, 10),
    };
    let exp_ok = exp.is_none_or(|e| digits(e.strip_prefix(['-', '+']).unwrap_or(e), 10));
    if mant_ok && exp_ok && (mant.contains('.') || exp.is_some()) {
        return text.parse().map_or(Plain::Text, Plain::Float);
    }
    Plain::Text
}

/// Bounds on what a scenario may be, so a hostile file costs little.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes of text. A 10,000-node scenario is about 600 KB.
    pub max_bytes: usize,
    /// Nested mappings and sequences. A scenario needs 4.
    pub max_depth: usize,
    /// Nodes in the tree after aliases are expanded (a "billion laughs" file
    /// is small but expands without bound). A 10,000-node scenario has about 100,000.
    pub max_nodes: usize,
    /// Of those, nodes copied in by aliases: an alias costs a copy of what it
    /// names, so copies get a tighter bound (a shared `ssh:` block on 5,000
    /// nodes is 25,000).
    pub max_alias_nodes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 16 << 20,
            max_depth: 32,
            max_nodes: 250_000,
            max_alias_nodes: 50_000,
        }
    }
}

/// Why the text could not be read into a tree.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadError {
    pub code: Code,
    pub pos: Option<Pos>,
    pub message: String,
    pub hint: String,
}

/// Reads `text` into a tree. `Ok(None)` is an empty document.
pub fn read(text: &str, limits: Limits) -> Result<Option<Node>, ReadError> {
    if text.len() > limits.max_bytes {
        return Err(ReadError {
            code: Code::TooLarge,
            pos: None,
            message: format!(
                "the file is {} bytes, more than the {} a scenario may have",
                text.len(),
                limits.max_bytes
            ),
            hint: "a 10,000-node scenario is well under 1 MB: is this the right file?".into(),
        });
    }
    if let Some(pos) = flow_depth_exceeds(text, limits.max_depth) {
        return Err(too_deep(pos, limits.max_depth));
    }
    let mut b = Builder {
        limits,
        stack: Vec::new(),
        anchors: Vec::new(),
        nodes: 0,
        aliased: 0,
        root: None,
        documents: 0,
    };
    let mut parser = Parser::new_from_str(text);
    loop {
        let (ev, mark) = parser.next_token().map_err(|e| syntax_error(text, &e))?;
        if ev == Event::StreamEnd {
            break;
        }
        b.on_event(ev, mark)?;
    }
    Ok(b.root)
}

fn pos(mark: &Marker) -> Pos {
    Pos {
        line: mark.line(),
        column: mark.col() + 1,
    }
}

fn too_deep(pos: Pos, max: usize) -> ReadError {
    ReadError {
        code: Code::TooDeep,
        pos: Some(pos),
        message: format!("the document nests more than {max} levels deep"),
        hint: "a scenario needs at most 4 levels (nodes[0].ssh.port): is this the right file?"
            .into(),
    }
}

/// The first position where `[`/`{` nesting exceeds `max`, skipping quoted
/// text and comments. One pass over the bytes, before the parser runs: the
/// parser's handling of nested flow collections is quadratic in their depth.
fn flow_depth_exceeds(text: &str, max: usize) -> Option<Pos> {
    #[derive(PartialEq)]
    enum St {
        Normal,
        Single,
        Double,
        Comment,
    }
    let mut st = St::Normal;
    let (mut depth, mut line, mut col) = (0usize, 1usize, 0usize);
    let mut prev = '\n';
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        col += 1;
        match st {
            St::Normal => match c {
                '[' | '{' => {
                    depth += 1;
                    if depth > max {
                        return Some(Pos { line, column: col });
                    }
                }
                ']' | '}' => depth = depth.saturating_sub(1),
                '\'' => st = St::Single,
                '"' => st = St::Double,
                '#' if prev.is_whitespace() => st = St::Comment,
                _ => {}
            },
            St::Single if c == '\'' => {
                if chars.peek() == Some(&'\'') {
                    chars.next();
                    col += 1;
                } else {
                    st = St::Normal;
                }
            }
            St::Double if c == '\\' => {
                chars.next();
                col += 1;
            }
            St::Double if c == '"' => st = St::Normal,
            _ => {}
        }
        if c == '\n' {
            line += 1;
            col = 0;
            if st == St::Comment {
                st = St::Normal;
            }
        }
        prev = c;
    }
    None
}

/// A scanner error in the user's words; tabs get their own message.
fn syntax_error(text: &str, e: &yaml_rust2::ScanError) -> ReadError {
    let at = pos(e.marker());
    if let Some(tab) = tab_indentation(text, at.line) {
        return ReadError {
            code: Code::Tab,
            pos: Some(tab),
            message: "YAML does not allow tabs for indentation: use spaces".into(),
            hint: "replace the tab at the start of this line with spaces (2 per level is usual)"
                .into(),
        };
    }
    let info = e.info();
    let hint = if info.contains("mapping values are not allowed") {
        "a value that contains `: ` must be quoted, e.g. \"a: b\"".to_string()
    } else if info.contains("did not find expected") || info.contains("could not find expected") {
        "check the indentation and that every bracket and quote is closed".to_string()
    } else {
        "check the indentation and the quoting around this position".to_string()
    };
    ReadError {
        code: Code::Syntax,
        pos: Some(at),
        message: format!("not valid YAML: {info}"),
        hint,
    }
}

/// The position of a tab in the indentation of a line up to `line` + 1 (the
/// scanner may stop at the end of the line before the tab).
fn tab_indentation(text: &str, line: usize) -> Option<Pos> {
    let mut found = None;
    for (i, l) in text.lines().take(line + 1).enumerate() {
        let indent: String = l.chars().take_while(|c| *c == ' ' || *c == '\t').collect();
        if let Some(c) = indent.find('\t') {
            if l.len() > indent.len() {
                found = Some(Pos {
                    line: i + 1,
                    column: c + 1,
                });
            }
        }
    }
    found
}

enum Open {
    Seq(Node, usize),
    Map {
        node: Node,
        anchor: usize,
        key: Option<(String, Pos)>,
    },
}

struct Builder {
    limits: Limits,
    stack: Vec<Open>,
    /// Anchored nodes with the size of each.
    anchors: Vec<(usize, Node, usize)>,
    nodes: usize,
    aliased: usize,
    root: Option<Node>,
    documents: usize,
}

impl Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) -> Result<(), ReadError> {
        let p = pos(&mark);
        match ev {
            Event::DocumentStart => {
                self.documents += 1;
                if self.documents > 1 {
                    return Err(ReadError {
                        code: Code::Syntax,
                        pos: Some(p),
                        message: "the file holds more than one YAML document".into(),
                        hint: "a scenario is one document: remove the second `---` and what follows, or split the file".into(),
                    });
                }
            }
            Event::Scalar(text, style, anchor, tag) => {
                self.count(1, p)?;
                let plain = style == TScalarStyle::Plain
                    && !tag.is_some_and(|t| t.handle == "tag:yaml.org,2002:" && t.suffix == "str");
                self.finish(
                    Node {
                        pos: p,
                        kind: Kind::Scalar { text, plain },
                    },
                    anchor,
                )?;
            }
            Event::SequenceStart(anchor, _) => {
                self.open(p)?;
                self.stack.push(Open::Seq(
                    Node {
                        pos: p,
                        kind: Kind::Seq(Vec::new()),
                    },
                    anchor,
                ));
            }
            Event::MappingStart(anchor, _) => {
                self.open(p)?;
                self.stack.push(Open::Map {
                    node: Node {
                        pos: p,
                        kind: Kind::Map(Vec::new()),
                    },
                    anchor,
                    key: None,
                });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match self.stack.pop() {
                    Some(Open::Seq(n, a)) => (n, a),
                    Some(Open::Map { node, anchor, .. }) => (node, anchor),
                    None => return Ok(()),
                };
                self.finish(node, anchor)?;
            }
            Event::Alias(id) => {
                // Count first, copy after: a bomb stops before it is built.
                let (n, at) = self
                    .anchors
                    .iter()
                    .enumerate()
                    .rev()
                    .find(|(_, (a, _, _))| *a == id)
                    .map(|(i, (_, _, n))| (*n, i))
                    .ok_or_else(|| ReadError {
                        code: Code::Syntax,
                        pos: Some(p),
                        message: "an alias refers to an anchor that is not defined".into(),
                        hint: "define `&name` before using `*name`".into(),
                    })?;
                self.aliased += n;
                if self.aliased > self.limits.max_alias_nodes {
                    return Err(ReadError {
                        code: Code::TooManyNodes,
                        pos: Some(p),
                        message: format!(
                            "aliases expand to more than {} values",
                            self.limits.max_alias_nodes
                        ),
                        hint:
                            "aliases (`*name`) that refer to aliases multiply: write the values out"
                                .into(),
                    });
                }
                self.count(n, p)?;
                let node = self.anchors[at].1.clone();
                // The copy keeps the anchor's positions: that is where the text is.
                self.finish(node, 0)?;
            }
            _ => {}
        }
        Ok(())
    }

    /// A mapping key that is itself a mapping or a list has no path.
    fn open(&mut self, p: Pos) -> Result<(), ReadError> {
        if let Some(Open::Map { key: None, .. }) = self.stack.last() {
            return Err(ReadError {
                code: Code::Syntax,
                pos: Some(p),
                message: "a mapping key must be plain text, not a list or a mapping".into(),
                hint: "write `key: value` with a simple name as the key".into(),
            });
        }
        if self.stack.len() >= self.limits.max_depth {
            return Err(too_deep(p, self.limits.max_depth));
        }
        self.count(1, p)
    }

    fn count(&mut self, n: usize, p: Pos) -> Result<(), ReadError> {
        self.nodes += n;
        if self.nodes > self.limits.max_nodes {
            return Err(ReadError {
                code: Code::TooManyNodes,
                pos: Some(p),
                message: format!(
                    "the document expands to more than {} values (aliases included)",
                    self.limits.max_nodes
                ),
                hint: "aliases (`*name`) that refer to aliases multiply: write the values out"
                    .into(),
            });
        }
        Ok(())
    }

    fn finish(&mut self, node: Node, anchor: usize) -> Result<(), ReadError> {
        if anchor != 0 {
            self.anchors.push((anchor, node.clone(), count(&node)));
        }
        match self.stack.last_mut() {
            None => {
                if self.root.is_none() {
                    self.root = Some(node);
                }
            }
            Some(Open::Seq(seq, _)) => {
                if let Kind::Seq(items) = &mut seq.kind {
                    items.push(node);
                }
            }
            Some(Open::Map { node: map, key, .. }) => match key.take() {
                None => match node.kind {
                    Kind::Scalar { text, .. } => *key = Some((text, node.pos)),
                    _ => {
                        return Err(ReadError {
                            code: Code::Syntax,
                            pos: Some(node.pos),
                            message: "a mapping key must be plain text, not a list or a mapping"
                                .into(),
                            hint: "write `key: value` with a simple name as the key".into(),
                        })
                    }
                },
                Some((k, key_pos)) => {
                    if let Kind::Map(entries) = &mut map.kind {
                        entries.push(Entry {
                            key: k,
                            key_pos,
                            value: node,
                        });
                    }
                }
            },
        }
        Ok(())
    }
}

/// Nodes in a subtree.
fn count(n: &Node) -> usize {
    match &n.kind {
        Kind::Scalar { .. } => 1,
        Kind::Seq(items) => 1 + items.iter().map(count).sum::<usize>(),
        Kind::Map(entries) => 1 + entries.iter().map(|e| 1 + count(&e.value)).sum::<usize>(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(text: &str) -> Node {
        read(text, Limits::default())
            .expect("reads")
            .expect("not empty")
    }

    #[test]
    fn plain_scalars_read_as_the_core_schema_says() {
        assert_eq!(plain_kind("1.30"), Plain::Float(1.3));
        assert_eq!(plain_kind("110"), Plain::Int(110));
        assert_eq!(plain_kind("-3"), Plain::Int(-3));
        assert_eq!(plain_kind("1e3"), Plain::Float(1000.0));
        assert_eq!(plain_kind("~"), Plain::Null);
        assert_eq!(plain_kind("true"), Plain::Bool(true));
        for t in [
            "1.29.4",
            "192.168.1.1",
            "10.0.0.0/16",
            "yes",
            "node-1",
            ".",
            "1.",
        ] {
            let want = if t == "1." {
                Plain::Float(1.0)
            } else {
                Plain::Text
            };
            assert_eq!(plain_kind(t), want, "{t}");
        }
    }

    #[test]
    fn nodes_carry_their_positions() {
        let t = tree("a:\n  b: [1, x]\n");
        let Kind::Map(e) = &t.kind else { panic!() };
        assert_eq!(e[0].key_pos, Pos { line: 1, column: 1 });
        let Kind::Map(inner) = &e[0].value.kind else {
            panic!()
        };
        assert_eq!(inner[0].value.pos, Pos { line: 2, column: 6 });
    }

    #[test]
    fn quoted_scalars_are_not_plain() {
        let t = tree("v: \"1.30\"\nw: !!str 1.30\n");
        let Kind::Map(e) = &t.kind else { panic!() };
        for x in e {
            assert!(matches!(&x.value.kind, Kind::Scalar { plain: false, .. }));
        }
    }

    #[test]
    fn hostile_inputs_stop_at_a_limit() {
        let deep = "[".repeat(200_000);
        assert_eq!(
            read(&deep, Limits::default()).unwrap_err().code,
            Code::TooDeep
        );
        let block: String = (0..100)
            .map(|i| format!("{}- \n", "  ".repeat(i)))
            .collect();
        let nested = format!("{}x", "- ".repeat(100));
        assert_eq!(
            read(&nested, Limits::default()).unwrap_err().code,
            Code::TooDeep
        );
        let _ = block;
        let mut laughs = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 0..12 {
            let prev = if i == 0 {
                "a".to_string()
            } else {
                format!("l{}", i - 1)
            };
            laughs.push_str(&format!(
                "l{i}: &l{i} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
            ));
        }
        assert_eq!(
            read(&laughs, Limits::default()).unwrap_err().code,
            Code::TooManyNodes
        );
        let big = "#".repeat(17 << 20);
        assert_eq!(
            read(&big, Limits::default()).unwrap_err().code,
            Code::TooLarge
        );
    }

    #[test]
    fn tabs_in_indentation_are_named() {
        let e = read("a:\n\tb: 1\n", Limits::default()).unwrap_err();
        assert_eq!(e.code, Code::Tab);
        assert_eq!(e.pos, Some(Pos { line: 2, column: 1 }));
    }

    #[test]
    fn brackets_in_quotes_and_comments_do_not_count() {
        let text = format!(
            "a: \"{}\" # {}\nb: '{}'\n",
            "[".repeat(100),
            "{".repeat(100),
            "[".repeat(100)
        );
        assert!(read(&text, Limits::default()).is_ok());
    }
}
