//! The source's floors point one way: no file of `src/` imports, through
//! the others, a file that imports it back. Read from the `crate::` and
//! `super::` paths each file names, comments and test modules aside; a
//! file naming its own parent module is not counted (a module and its
//! children are one piece).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Every file's module path (`store::sqlite`) and its text.
fn modules() -> BTreeMap<String, String> {
    fn walk(dir: &Path, into: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, into);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
                let relative = path.strip_prefix(&src).unwrap().with_extension("");
                let name = relative.to_str().unwrap().replace('/', "::");
                let name = name.strip_suffix("::mod").unwrap_or(&name).to_owned();
                into.insert(name, std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let mut modules = BTreeMap::new();
    walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut modules);
    modules
}

/// The module paths `text` names after `prefix` (`crate::a::b`).
fn paths_after<'a>(text: &'a str, prefix: &'a str) -> impl Iterator<Item = String> + 'a {
    text.match_indices(prefix).map(move |(at, _)| {
        let rest = &text[at + prefix.len()..];
        let end = rest.find(|c: char| !(c.is_ascii_lowercase() || c == '_' || c == ':'));
        rest[..end.unwrap_or(rest.len())].trim_end_matches(':').to_owned()
    })
}

/// Which files each file imports.
fn imports(modules: &BTreeMap<String, String>) -> BTreeMap<&str, BTreeSet<&str>> {
    let mut edges = BTreeMap::new();
    for (name, text) in modules {
        let code: String = text
            .split("#[cfg(test)]\nmod tests")
            .next()
            .unwrap()
            .lines()
            .map(|line| line.split("//").next().unwrap())
            .collect::<Vec<_>>()
            .join("\n");
        let parent = name.rsplit_once("::").map_or("", |(parent, _)| parent);
        let mut named: Vec<String> = paths_after(&code, "crate::").collect();
        named.extend(paths_after(&code, "super::").map(|p| {
            if parent.is_empty() {
                p
            } else if p.is_empty() {
                parent.to_owned()
            } else {
                format!("{parent}::{p}")
            }
        }));
        let mut targets = BTreeSet::new();
        for path in named {
            // The longest prefix of the path that is a file.
            let mut path = path.as_str();
            let target = loop {
                if let Some((key, _)) = modules.get_key_value(path) {
                    break Some(key.as_str());
                }
                match path.rsplit_once("::") {
                    Some((up, _)) => path = up,
                    None => break None,
                }
            };
            let own = |t: &str| t == name || name.starts_with(&format!("{t}::"));
            if let Some(target) = target.filter(|t| !own(t)) {
                targets.insert(target);
            }
        }
        edges.insert(name.as_str(), targets);
    }
    edges
}

#[test]
fn no_file_imports_one_that_imports_it_back() {
    let modules = modules();
    let edges = imports(&modules);
    assert!(edges.len() > 30, "the sources were read: {:?}", edges.keys());
    // Depth-first search; a file met again while still on the path closes a cycle.
    fn visit<'a>(
        at: &'a str,
        edges: &BTreeMap<&'a str, BTreeSet<&'a str>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) {
        if let Some(from) = path.iter().position(|p| *p == at) {
            panic!("an import cycle: {} -> {at}", path[from..].join(" -> "));
        }
        if !done.insert(at) {
            return;
        }
        path.push(at);
        for next in &edges[at] {
            visit(next, edges, path, done);
        }
        path.pop();
    }
    let mut done = BTreeSet::new();
    for start in edges.keys() {
        visit(start, &edges, &mut Vec::new(), &mut done);
    }
}
