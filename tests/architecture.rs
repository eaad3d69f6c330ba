//! The shape of the code: dependencies point one way, between crates and between files.
//!
//! Crates: config <- data <- model <- tracking <- actors <- daemon, read from each crate's
//! `Cargo.toml`. Files: every path a file names (`use crate::a::b`, `crate::a::b::C` in code
//! or attributes, `super::x`, `self::x`) is resolved to the module file it lands in, and the
//! graph of those edges must have no cycle. A cycle is reported with the files on it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The layers, lowest first, as (package, folder).
const LAYERS: [(&str, &str); 6] = [
    ("sentimentd-config", "config"),
    ("sentimentd-data", "data"),
    ("sentimentd-model", "model"),
    ("sentimentd-tracking", "tracking"),
    ("sentimentd-actors", "actors"),
    ("sentimentd", "."),
];

/// The workspace packages a manifest's `[dependencies]` names.
fn internal_deps(manifest: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(manifest).expect("Cargo.toml");
    let doc: toml::Table = toml::from_str(&text).expect("Cargo.toml parses");
    doc.get("dependencies")
        .and_then(|d| d.as_table())
        .map(|d| {
            d.keys()
                .filter(|k| LAYERS.iter().any(|(p, _)| p == k))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn crates_depend_only_on_the_layers_below_them() {
    for (i, (package, folder)) in LAYERS.iter().enumerate() {
        let below: BTreeSet<&str> = LAYERS[..i].iter().map(|(p, _)| *p).collect();
        for dep in internal_deps(&repo().join(folder).join("Cargo.toml")) {
            assert!(
                below.contains(dep.as_str()),
                "{package} depends on {dep}, which is not below it in {LAYERS:?}"
            );
        }
    }
}

/// Module path (`["http", "predict"]`) of every `.rs` file under `src`.
fn modules(src: &Path) -> BTreeMap<Vec<String>, PathBuf> {
    fn walk(dir: &Path, prefix: &[String], out: &mut BTreeMap<Vec<String>, PathBuf>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .expect("source dir")
            .flatten()
            .map(|e| e.path())
            .collect();
        entries.sort();
        for path in entries {
            let name = path
                .file_stem()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            if path.is_dir() {
                let mut p = prefix.to_vec();
                p.push(name);
                walk(&path, &p, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let module = match name.as_str() {
                    "lib" | "main" | "mod" => prefix.to_vec(),
                    _ => {
                        let mut p = prefix.to_vec();
                        p.push(name);
                        p
                    }
                };
                out.insert(module, path);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(src, &[], &mut out);
    out
}

/// The code of a file that counts: comments and the inline test module left out (a test
/// module's `super` is the file itself).
fn code_of(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("source file");
    let text = match text.find("#[cfg(test)]\nmod tests {") {
        Some(i) => &text[..i],
        None => &text[..],
    };
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path a piece of code names, expanded from `use` groups: `a::{b, c::{d}}` gives
/// `a::b` and `a::c::d`.
fn named_paths(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        let starts = ["crate::", "super::", "self::"]
            .iter()
            .find(|p| code_at(&bytes, i).starts_with(**p));
        let boundary = i == 0 || !(bytes[i - 1].is_alphanumeric() || bytes[i - 1] == '_');
        if let (Some(_), true) = (starts, boundary) {
            let (paths, end) = parse_path(&bytes, i);
            out.extend(paths);
            i = end.max(i + 1);
        } else {
            i += 1;
        }
    }
    out
}

fn code_at(chars: &[char], i: usize) -> String {
    chars[i..chars.len().min(i + 8)].iter().collect()
}

/// Parses `seg::seg::{...}` at `i`; returns the expanded paths and where it ended.
fn parse_path(chars: &[char], mut i: usize) -> (Vec<Vec<String>>, usize) {
    let mut prefix = Vec::new();
    loop {
        let start = i;
        while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
            i += 1;
        }
        if i > start {
            prefix.push(chars[start..i].iter().collect::<String>());
        }
        if chars.get(i) == Some(&':') && chars.get(i + 1) == Some(&':') {
            i += 2;
            if chars.get(i) == Some(&'{') {
                let mut paths = Vec::new();
                i += 1;
                loop {
                    while chars.get(i).is_some_and(|c| c.is_whitespace() || *c == ',') {
                        i += 1;
                    }
                    match chars.get(i) {
                        None => return (paths, i),
                        Some('}') => return (paths, i + 1),
                        _ => {}
                    }
                    let (inner, end) = parse_path(chars, i);
                    for p in inner {
                        let mut full = prefix.clone();
                        full.extend(p);
                        paths.push(full);
                    }
                    // Past an `as x` rename, to the next item of the group.
                    i = end;
                    while chars.get(i).is_some_and(|c| *c != ',' && *c != '}') {
                        i += 1;
                    }
                }
            }
            if chars.get(i) == Some(&'*') {
                return (vec![prefix], i + 1);
            }
            continue;
        }
        return (vec![prefix], i);
    }
}

/// The module a path lands in, from the file at `here`: the longest prefix that is a module.
fn resolve(
    here: &[String],
    path: &[String],
    known: &BTreeMap<Vec<String>, PathBuf>,
) -> Option<Vec<String>> {
    let mut abs: Vec<String> = Vec::new();
    let mut rest = path;
    match path.first().map(String::as_str) {
        Some("crate") => rest = &path[1..],
        Some("self") => {
            abs = here.to_vec();
            rest = &path[1..];
        }
        Some("super") => {
            abs = here.to_vec();
            while rest.first().map(String::as_str) == Some("super") {
                abs.pop();
                rest = &rest[1..];
            }
        }
        _ => return None,
    }
    let rest: Vec<String> = rest.iter().filter(|s| *s != "self").cloned().collect();
    abs.extend(rest);
    (0..=abs.len())
        .rev()
        .map(|n| abs[..n].to_vec())
        .find(|m| known.contains_key(m))
}

/// Whether `code` names `name::…` as a path of its own (not `other::name::…`).
fn names_child(code: &str, name: &str) -> bool {
    let pattern = format!("{name}::");
    code.match_indices(&pattern).any(|(i, _)| {
        let before = code[..i].chars().next_back();
        !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
    })
}

/// The cycles of a graph, as its strongly connected components of more than one node.
fn cycles(graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Vec<Vec<Vec<String>>> {
    // Kosaraju: finish order on the graph, then components on the reversed graph.
    let nodes: Vec<&Vec<String>> = graph.keys().collect();
    let mut seen = BTreeSet::new();
    let mut order = Vec::new();
    for n in &nodes {
        let mut stack = vec![(*n, false)];
        while let Some((node, done)) = stack.pop() {
            if done {
                order.push(node);
                continue;
            }
            if !seen.insert(node) {
                continue;
            }
            stack.push((node, true));
            for next in graph.get(node).into_iter().flatten() {
                if !seen.contains(next) {
                    stack.push((next, false));
                }
            }
        }
    }
    let mut reversed: BTreeMap<&Vec<String>, Vec<&Vec<String>>> = BTreeMap::new();
    for (from, tos) in graph {
        for to in tos {
            reversed.entry(to).or_default().push(from);
        }
    }
    let mut assigned = BTreeSet::new();
    let mut out = Vec::new();
    for n in order.into_iter().rev() {
        if assigned.contains(n) {
            continue;
        }
        let mut component = Vec::new();
        let mut stack = vec![n];
        while let Some(node) = stack.pop() {
            if !assigned.insert(node) {
                continue;
            }
            component.push(node.clone());
            for prev in reversed.get(node).into_iter().flatten() {
                if !assigned.contains(prev) {
                    stack.push(prev);
                }
            }
        }
        if component.len() > 1 {
            component.sort();
            out.push(component);
        }
    }
    out
}

fn file_graph(src: &Path) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let known = modules(src);
    let mut graph = BTreeMap::new();
    for (module, path) in &known {
        let mut edges = BTreeSet::new();
        let code = code_of(path);
        let mut named = named_paths(&code);
        // A parent naming its own child module by its bare name (`use model::Trained;`,
        // `features::Featurizer`).
        for child in known
            .keys()
            .filter(|k| k.len() == module.len() + 1 && k.starts_with(module))
        {
            let name = &child[module.len()];
            if names_child(&code, name) {
                named.push(vec!["self".to_string(), name.clone()]);
            }
        }
        for named in named {
            if let Some(target) = resolve(module, &named, &known) {
                // A module's own file, and the parent a child's `super::` reaches through.
                let is_ancestor = module.starts_with(&target);
                if target != *module && !is_ancestor {
                    edges.insert(target);
                }
            }
        }
        graph.insert(module.clone(), edges);
    }
    graph
}

#[test]
fn no_file_depends_on_itself_through_others() {
    let mut report = String::new();
    for (_, folder) in LAYERS {
        let src = if folder == "." {
            repo().join("daemon")
        } else {
            repo().join(folder).join("src")
        };
        let graph = file_graph(&src);
        for cycle in cycles(&graph) {
            let files: Vec<String> = cycle
                .iter()
                .map(|m| format!("{folder}::{}", m.join("::")))
                .collect();
            report.push_str(&format!("{}\n", files.join(" <-> ")));
        }
    }
    assert!(report.is_empty(), "file cycles:\n{report}");
}

/// Ingestion hands texts to the scorer; only the scorer and the batcher talk to the inference
/// pool (and the topology, which starts it).
#[test]
fn only_the_scorer_reaches_the_inference_pool() {
    let src = repo().join("actors/src");
    let mut offenders = Vec::new();
    for (module, path) in modules(&src) {
        let code = code_of(&path);
        let allowed = matches!(
            module.join("::").as_str(),
            "" | "topology"
                | "serving::scorer"
                | "serving::batcher"
                | "serving::inference"
                | "messages"
        );
        if !allowed && (code.contains("ScoreChunk") || code.contains("serving::inference")) {
            offenders.push(path.display().to_string());
        }
    }
    assert!(offenders.is_empty(), "{offenders:?}");
}

#[test]
fn the_checker_finds_a_cycle_and_resolves_groups() {
    // Guards the test above against passing because it sees nothing.
    let paths = named_paths("use crate::a::{b::C, self, d::{E, f}};\nlet x = super::g::h();");
    assert!(paths.contains(&vec!["crate".into(), "a".into(), "b".into(), "C".into()]));
    assert!(paths.contains(&vec!["crate".into(), "a".into(), "d".into(), "f".into()]));
    assert!(paths.contains(&vec!["super".into(), "g".into(), "h".into()]));
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("lib.rs"), "mod a;\nmod b;\n").expect("lib");
    std::fs::write(dir.path().join("a.rs"), "use crate::b::B;\npub struct A;\n").expect("a");
    std::fs::write(dir.path().join("b.rs"), "pub struct B(crate::a::A);\n").expect("b");
    let found = cycles(&file_graph(dir.path()));
    assert_eq!(
        found,
        vec![vec![vec!["a".to_string()], vec!["b".to_string()]]]
    );
    // A parent that names a child by its bare path, and a file the child names back.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("p")).expect("p");
    std::fs::write(dir.path().join("lib.rs"), "mod p;\nmod q;\n").expect("lib");
    std::fs::write(dir.path().join("p/mod.rs"), "mod c;\nuse c::C;\n").expect("p");
    std::fs::write(dir.path().join("p/c.rs"), "pub struct C;\n").expect("c");
    std::fs::write(
        dir.path().join("q.rs"),
        "pub struct Q;\nfn f(_: crate::p::X) {}\n",
    )
    .expect("q");
    std::fs::write(dir.path().join("p/c.rs"), "pub struct C(crate::q::Q);\n").expect("c");
    let found = cycles(&file_graph(dir.path()));
    assert_eq!(found.len(), 1, "{found:?}");
}
