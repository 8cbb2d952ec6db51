//! `src/imap`'s modules import one another in one direction only: shared
//! session types sit in a module that imports no command handler, and
//! handlers import it, never each other in a ring (doc/imap.md, "Code
//! layout"). This test reads the sources, builds the graph of module
//! imports (`use super::…`, `use crate::imap::…`, and paths such as
//! `super::fetch::items(…)` written inline) and fails on any cycle,
//! naming it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module path under `crate::imap`, e.g. `["cmd", "fetch"]`; `[]` is
/// `imap` itself.
type Module = Vec<String>;

/// Every module file under `dir`, with its module path.
fn modules(dir: &Path, prefix: &Module, found: &mut BTreeMap<Module, PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("src/imap is readable")
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            let mut sub = prefix.clone();
            sub.push(name);
            modules(&path, &sub, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let mut module = prefix.clone();
            if name != "mod" {
                module.push(name);
            }
            found.insert(module, path);
        }
    }
}

/// The source without comments, and without the `#[cfg(test)]` module at
/// its end (whose `super` is the file's own module).
fn code_of(source: &str) -> String {
    let source = match source.find("#[cfg(test)]\nmod tests") {
        Some(at) => &source[..at],
        None => source,
    };
    source
        .lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Expands a `use` tree (`super::{a, b::{c, d}}`) into its paths.
fn expand(tree: &str) -> Vec<String> {
    let tree: String = tree.chars().filter(|c| !c.is_whitespace()).collect();
    let Some(open) = tree.find('{') else {
        return vec![tree];
    };
    let head = &tree[..open];
    let Some(close) = tree.rfind('}').filter(|c| *c > open) else {
        return Vec::new();
    };
    let inner = &tree[open + 1..close];
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .flat_map(|p| expand(p).into_iter().map(move |e| format!("{head}{e}")))
        .collect()
}

/// Every path the code names that starts at `super`, `self` or
/// `crate::imap`: `use` trees expanded, and inline paths.
fn paths_named(code: &str) -> Vec<String> {
    let mut paths = Vec::new();
    // `use` statements: from a line starting with `use` (or `pub use`,
    // `pub(crate) use`) to the next `;`.
    let mut at = 0;
    for line in code.split_inclusive('\n') {
        let trimmed = line.trim_start();
        let body = ["use ", "pub use ", "pub(crate) use ", "pub(super) use "]
            .iter()
            .find_map(|p| trimmed.strip_prefix(p));
        if let Some(body) = body {
            let start = at + (line.len() - body.len());
            if let Some(end) = code[start..].find(';') {
                paths.extend(expand(&code[start..start + end]));
            }
        }
        at += line.len();
    }
    // Inline paths: `super::a::b(`, `crate::imap::a::B`.
    let bytes = code.as_bytes();
    for start in ["super::", "crate::imap::", "self::"] {
        let mut from = 0;
        while let Some(at) = code[from..].find(start) {
            let begin = from + at;
            from = begin + start.len();
            if begin > 0 && (bytes[begin - 1].is_ascii_alphanumeric() || bytes[begin - 1] == b'_') {
                continue;
            }
            let end = code[begin..]
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .map_or(code.len(), |e| begin + e);
            paths.push(code[begin..end].trim_end_matches(':').to_owned());
        }
    }
    paths
}

/// The module a path names: the longest known module it starts with.
fn resolve(path: &str, from: &Module, known: &BTreeMap<Module, PathBuf>) -> Option<Module> {
    let mut segments: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    let mut base: Module = if segments.first() == Some(&"crate") {
        if segments.get(1) != Some(&"imap") {
            return None;
        }
        segments.drain(..2);
        Vec::new()
    } else {
        // `self` is the file's module; each `super` goes one level up.
        let mut base = from.clone();
        match segments.first() {
            Some(&"self") => {
                segments.remove(0);
            }
            Some(&"super") => {
                while segments.first() == Some(&"super") {
                    segments.remove(0);
                    base.pop()?;
                }
            }
            _ => return None,
        }
        base
    };
    let mut best = base.clone();
    for s in segments {
        base.push(s.to_owned());
        if known.contains_key(&base) {
            best = base.clone();
        } else {
            break;
        }
    }
    Some(best)
}

fn graph(root: &Path) -> BTreeMap<Module, BTreeSet<Module>> {
    let mut known = BTreeMap::new();
    modules(root, &Vec::new(), &mut known);
    let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (module, file) in &known {
        let source = std::fs::read_to_string(file).expect("source is readable");
        let targets = edges.entry(module.clone()).or_default();
        for path in paths_named(&code_of(&source)) {
            if let Some(target) = resolve(&path, module, &known)
                && &target != module
                // A module's parent declares it (`pub mod x;`) and may
                // hold types it uses; a parent using its child is the
                // edge that counts, the other way is not a cycle by
                // itself.
                && !(module.starts_with(&target) && target.len() < module.len())
            {
                targets.insert(target);
            }
        }
    }
    edges
}

/// A cycle of the graph, if there is one (depth-first search).
fn find_cycle(edges: &BTreeMap<Module, BTreeSet<Module>>) -> Option<Vec<Module>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        node: &Module,
        edges: &BTreeMap<Module, BTreeSet<Module>>,
        marks: &mut BTreeMap<Module, Mark>,
        stack: &mut Vec<Module>,
    ) -> Option<Vec<Module>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let at = stack.iter().position(|m| m == node).unwrap();
                let mut cycle = stack[at..].to_vec();
                cycle.push(node.clone());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node.clone(), Mark::Open);
        stack.push(node.clone());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, marks, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        marks.insert(node.clone(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in edges.keys() {
        if let Some(cycle) = visit(node, edges, &mut marks, &mut Vec::new()) {
            return Some(cycle);
        }
    }
    None
}

fn name(m: &Module) -> String {
    if m.is_empty() {
        "imap".to_owned()
    } else {
        format!("imap::{}", m.join("::"))
    }
}

#[test]
fn imap_modules_import_each_other_without_a_cycle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/imap");
    let edges = graph(&root);
    assert!(edges.len() > 10, "src/imap was not read: {edges:?}");
    // The graph is not empty by mistake: the session's imports are seen.
    let session = &edges[&vec!["session".to_owned()]];
    for seen in [
        vec!["state".to_owned()],
        vec!["cmd".to_owned(), "fetch".to_owned()],
    ] {
        assert!(
            session.contains(&seen),
            "session -> {seen:?} not seen: {session:?}"
        );
    }
    if let Some(cycle) = find_cycle(&edges) {
        let ring: Vec<String> = cycle.iter().map(name).collect();
        panic!("import cycle in src/imap: {}", ring.join(" -> "));
    }
}

#[test]
fn the_graph_sees_use_trees_and_inline_paths() {
    let code = "use super::{Imap, a::{B, c}};\nuse crate::imap::d::E;\nfn f() { super::e::g(); }";
    let paths = paths_named(code);
    for p in [
        "super::Imap",
        "super::a::B",
        "super::a::c",
        "crate::imap::d::E",
        "super::e::g",
    ] {
        assert!(paths.iter().any(|x| x == p), "{p} missing from {paths:?}");
    }
    let mut edges = BTreeMap::new();
    let m = |s: &str| vec![s.to_owned()];
    edges.insert(m("a"), BTreeSet::from([m("b")]));
    edges.insert(m("b"), BTreeSet::from([m("c")]));
    edges.insert(m("c"), BTreeSet::from([m("a")]));
    assert_eq!(
        find_cycle(&edges),
        Some(vec![m("a"), m("b"), m("c"), m("a")])
    );
    edges.insert(m("c"), BTreeSet::new());
    assert_eq!(find_cycle(&edges), None);
}
